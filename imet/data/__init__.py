"""imet.data"""


