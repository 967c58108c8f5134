"""imet.train"""


