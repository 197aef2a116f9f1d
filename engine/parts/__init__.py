"""Whole-mesh parts: split a prepared mesh into parts (segment_all) and find a part by name (text)."""
