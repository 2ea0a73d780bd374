from fastcert._ext import build_info
