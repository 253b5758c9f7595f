"""Inputs: real episodes (a video folder, LeRobot datasets), the samples cut from them, synthetic samples, and the
prompt tokenizer. Imports only core."""
