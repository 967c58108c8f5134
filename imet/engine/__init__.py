"""imet.engine"""
