# create-qcow2-opts
qemu-img create -f qcow2 -o cluster_size=4096,lazy_refcounts=on a.qcow2 1G
qemu-img info --output=json a.qcow2 | grep -v actual-size
