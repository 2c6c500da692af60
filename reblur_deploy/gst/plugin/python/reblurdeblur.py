"""Entry point of GStreamer's Python plugin loader (found through GST_PLUGIN_PATH, see
reblur_deploy.gst): registers the ``reblurdeblur`` element of reblur_deploy.gst.element."""

from reblur_deploy.gst.element import FACTORY as __gstelementfactory__  # noqa: F401
