"""Coverage-guided fuzz targets of every parser that takes input from outside."""
