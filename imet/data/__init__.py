"""imet.data"""
