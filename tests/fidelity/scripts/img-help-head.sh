# img-help-head
qemu-img --help | sed -n 2,4p
