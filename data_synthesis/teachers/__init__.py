"""Teachers: whatever writes the rationales that synthesis anchors on the human labels."""
