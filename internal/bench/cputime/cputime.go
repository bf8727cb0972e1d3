// Package cputime reads the CPU time this process has used, for the
// measuring tools' CPU seconds per GB: getrusage(RUSAGE_SELF), every
// thread of the process, user and system.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the user and system CPU time this process has used, or
// zeros where getrusage fails.
func Process() (user, system time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// Total returns the user plus system CPU time this process has used.
func Total() time.Duration {
	u, s := Process()
	return u + s
}
