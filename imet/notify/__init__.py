"""imet.notify"""
