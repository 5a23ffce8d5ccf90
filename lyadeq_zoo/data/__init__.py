"""Data sets (registry kind ``dataset``): real torchvision loaders, local copies and shipped samples."""
