module slatedb-operator/e2e/s3-gate

go 1.26
