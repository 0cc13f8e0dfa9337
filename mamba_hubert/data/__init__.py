"""Data recipe: a synthetic transcribed corpus, MFCC features and k-means labels in fairseq's formats."""
