"""imet.predict"""
