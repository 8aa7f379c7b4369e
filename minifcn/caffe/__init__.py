"""Caffe's files, read and written by hand (no Caffe, no protobuf package needed):

    net = read_net("voc-fcn8s/deploy.prototxt")          # a .prototxt -> a minifcn Net
    report = read_weights(net, "fcn8s-heavy-pascal.caffemodel")
    write_weights(net, "mine.caffemodel")                 # and back
    solver = read_solver("voc-fcn8s/solver.prototxt")     # base_lr, momentum, lr policy, ...

One concept a file: text_format.py (the prototxt text format), schema.py (the part of
caffe.proto minifcn reads: field numbers and types), net.py (NetParameter -> Net), wire.py
(protobuf's binary wire format), caffemodel.py (weights in and out), solver.py
(SolverParameter and the reference's solve.py recipe). Every error names the file and the line
(text) or byte offset and field (binary).
"""
from .net import DataLayer, NetInfo, read_net  # noqa: F401
from .text_format import PrototxtError, parse, parse_file  # noqa: F401

__all__ = ["read_net", "NetInfo", "DataLayer", "PrototxtError", "parse", "parse_file"]
