"""imet.report"""
