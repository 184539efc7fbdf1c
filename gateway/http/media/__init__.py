"""Audio and images through the router (docs/media.md): transcriptions, translations, speech, image generations and edits."""

from gateway.http.media.relay import MediaRelay
from gateway.http.media.routes import MEDIA_ROUTES, MediaRoute

__all__ = ["MEDIA_ROUTES", "MediaRelay", "MediaRoute"]
