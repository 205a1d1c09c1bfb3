"""Identity: the face pipeline (detect, align to the ArcFace template, embed) that identity features come from."""
