"""The SynthFace judges: the measuring sticks of every FaceSmith benchmark.

- ``attributes.AttributeJudge``: attributes and identity facts of a face image;
- ``recognizer.IdentityRecognizer``: 128-d identity embeddings and a same-person threshold;
- ``detector.FaceDetector``: face box + 5 landmarks (SCRFD layout; also exported for insightface);
- ``metrics``: identity similarity, verification rate, attribute adherence, diversity, judge reports.

Importing this package loads nothing; weights load on first use.
"""
