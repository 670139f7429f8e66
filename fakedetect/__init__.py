"""fakedetect: detectors of AI-generated images."""
