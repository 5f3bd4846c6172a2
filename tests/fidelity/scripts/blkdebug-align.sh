# blkdebug-align
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -c 'read 0 512' -c 'write 512 512' --image-opts driver=raw,file.driver=blkdebug,file.align=4096,file.image.filename=a.raw | sed 's/(.*)/X/'
