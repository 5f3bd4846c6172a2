# info-image-opts
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img info --image-opts driver=qcow2,file.filename=a.qcow2 | grep -v 'disk size'
