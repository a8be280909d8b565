"""Data: volume and HDF5 I/O, downloads, training-set generators."""
