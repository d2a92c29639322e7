"""Detection: the filter-bank Detector, its torch correlation engine, template selection."""
