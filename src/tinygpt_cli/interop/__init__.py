"""Other tools' formats: Hugging Face transformers folders, export, pretrained weights."""
