"""Weight sources (Hugging Face, mirrors, ModelScope, a local folder) and the downloader.

Importing this package is light: the hub clients are imported by the functions that use them.

    from provision.hub import download_profile, verify_profile
    result = download_profile(profile, source="auto")   # -> DownloadResult (.to_json())
    check = verify_profile(profile, lock_file)           # -> VerifyResult (.ok, .problems)
"""

from provision.hub.download import DownloadResult, FileRecord, download_profile, model_record
from provision.hub.verify import FileCheck, VerifyResult, verify_profile

__all__ = [
    "DownloadResult",
    "FileCheck",
    "FileRecord",
    "VerifyResult",
    "download_profile",
    "model_record",
    "verify_profile",
]
