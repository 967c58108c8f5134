"""imet.kaggle"""


