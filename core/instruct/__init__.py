"""Multimodal instructions (MIGE): text with referenced images drives subject-driven generation, instruction
editing and both at once, on the one Generate path."""
