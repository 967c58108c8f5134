"""imet.models"""
