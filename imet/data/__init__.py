"""imet.data: the competition's files (labels, layout, folds), images and their cache, transforms
and the dataset, and mini-iMet."""
