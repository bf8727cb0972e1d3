//go:build !linux

package main

import (
	"errors"
	"syscall"
)

var errNoRoot = errors.New("the kernel sender needs Linux")

func newKernelSender(key, string, int) (*sender, error) { return nil, errNoRoot }

func childAttr() *syscall.SysProcAttr { return nil }
