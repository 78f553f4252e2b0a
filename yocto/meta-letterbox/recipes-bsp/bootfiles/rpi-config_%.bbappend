# As image/boards/rpi4/config.txt: the Pi 4's core clock pinned so that the mini UART's
# baud rate (the serial console) stays right.
RPI_EXTRA_CONFIG:append:raspberrypi4-64 = "\ncore_freq=360"
