# io-image-opts
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io --image-opts -c 'write 0 4k' driver=qcow2,file.filename=a.qcow2 | sed 's/(.*)/X/'
