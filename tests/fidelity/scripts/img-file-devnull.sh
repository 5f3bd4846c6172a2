# img-file-devnull
qemu-img info -f raw --image-opts driver=file,filename=/dev/null; echo rc=$?
