"""End-to-end pipelines: the Detector, the MCF loop, whole-slide runs."""
