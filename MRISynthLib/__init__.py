"""MRISynth library: MR physics, contrast synthesis and reconstruction (no Slicer imports)."""
__version__ = "0.1.0"
