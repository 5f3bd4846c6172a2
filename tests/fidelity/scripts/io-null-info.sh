# io-null-info
qemu-io -c info -c length 'json:{"driver": "null-co", "size": 1048576}'
