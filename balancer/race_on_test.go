//go:build race

package balancer

// raceOn is true in a -race build: the simulation runs smaller there.
const raceOn = true
