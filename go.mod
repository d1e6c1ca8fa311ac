module github.com/lodestar-go/lodestar

go 1.26.7

require github.com/cespare/xxhash/v2 v2.3.0
