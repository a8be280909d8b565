"""MR physics: signal equations, tissue tables, phantoms, Fourier/SENSE operators, masks."""
