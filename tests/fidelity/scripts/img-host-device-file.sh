# img-host-device-file
qemu-img create -f raw a.raw 1M >/dev/null
qemu-img info --image-opts driver=host_device,filename=a.raw; echo rc=$?
