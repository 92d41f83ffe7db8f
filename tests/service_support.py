"""The small demo service the UI test modules each build: 64 px images, at most 50 steps and 4 images, backend loaded."""
from ui.service import Service
from ui.settings import Settings


def demo_service(data_dir) -> Service:
    """A service on the offline demo writing under ``data_dir``, its diffusion backend already loaded."""
    service = Service(Settings(data_dir=str(data_dir), image_size=64, max_steps=50, max_images=4))
    service.backend()
    return service
