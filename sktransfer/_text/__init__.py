"""Text inputs and text models: ``inputs`` adapts what the user passes (a
list, array or pandas Series of strings, a one-column DataFrame) into a
checked sequence of texts; the text estimators build on it."""
