"""A project of one's own around fakedetect: a residual CNN and a Poly-1 loss, built from this folder's conf/."""
