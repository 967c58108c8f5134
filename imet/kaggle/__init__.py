"""imet.kaggle"""
