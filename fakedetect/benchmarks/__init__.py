"""Measurements of fakedetect itself: throughput against a plain loop, time to accuracy, the staged GPU suite."""
