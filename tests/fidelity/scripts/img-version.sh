# img-version
qemu-img --version | head -1 | cut -d' ' -f1-2
