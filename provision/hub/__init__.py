"""Weight sources (Hugging Face, mirrors, ModelScope, a local folder) and the downloader."""
