# measure-size
qemu-img measure -O qcow2 --size 1G
qemu-img measure -O qcow2 --size 1G --output=json
