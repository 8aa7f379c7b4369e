"""An independent encoder and parser of Caffe's files for the tests: protobuf's own message
classes, built at run time from descriptors (there is no protoc here), for the messages of
caffe.proto the reference FCN files use. Field numbers, types and labels are copied by hand
from BVLC/caffe master, src/caffe/proto/caffe.proto (proto2) -- written apart from
minifcn/caffe/schema.py on purpose, so a wrong number in either shows up as a failing test.

    NetParameter = messages()["NetParameter"]
    net = NetParameter(); text_format.Parse(open(path).read(), net)
    unpacked = messages(packed=False)     # the same messages with floats written unpacked
"""
import functools

import pytest

descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
from google.protobuf import descriptor_pool, message_factory  # noqa: E402

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
T = {"string": F.TYPE_STRING, "bool": F.TYPE_BOOL, "int32": F.TYPE_INT32,
     "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "float": F.TYPE_FLOAT,
     "double": F.TYPE_DOUBLE}

# message -> [(field, number, label, type)]; a type not in T is a message or "enum:Name"
CAFFE = {
    "BlobShape": [("dim", 1, REP, "int64")],
    "BlobProto": [("shape", 7, OPT, "BlobShape"), ("data", 5, REP, "float"),
                  ("diff", 6, REP, "float"), ("double_data", 8, REP, "double"),
                  ("double_diff", 9, REP, "double"), ("num", 1, OPT, "int32"),
                  ("channels", 2, OPT, "int32"), ("height", 3, OPT, "int32"),
                  ("width", 4, OPT, "int32")],
    "FillerParameter": [("type", 1, OPT, "string"), ("value", 2, OPT, "float"),
                        ("min", 3, OPT, "float"), ("max", 4, OPT, "float"),
                        ("mean", 5, OPT, "float"), ("std", 6, OPT, "float")],
    "NetParameter": [("name", 1, OPT, "string"), ("input", 3, REP, "string"),
                     ("input_shape", 8, REP, "BlobShape"), ("input_dim", 4, REP, "int32"),
                     ("layer", 100, REP, "LayerParameter"),
                     ("layers", 2, REP, "V1LayerParameter")],
    "NetStateRule": [("phase", 1, OPT, "enum:Phase"), ("min_level", 2, OPT, "int32"),
                     ("max_level", 3, OPT, "int32"), ("stage", 4, REP, "string"),
                     ("not_stage", 5, REP, "string")],
    "ParamSpec": [("name", 1, OPT, "string"), ("lr_mult", 3, OPT, "float"),
                  ("decay_mult", 4, OPT, "float")],
    "LayerParameter": [("name", 1, OPT, "string"), ("type", 2, OPT, "string"),
                       ("bottom", 3, REP, "string"), ("top", 4, REP, "string"),
                       ("loss_weight", 5, REP, "float"), ("param", 6, REP, "ParamSpec"),
                       ("blobs", 7, REP, "BlobProto"), ("include", 8, REP, "NetStateRule"),
                       ("exclude", 9, REP, "NetStateRule"),
                       ("loss_param", 101, OPT, "LossParameter"),
                       ("accuracy_param", 102, OPT, "AccuracyParameter"),
                       ("concat_param", 104, OPT, "ConcatParameter"),
                       ("convolution_param", 106, OPT, "ConvolutionParameter"),
                       ("crop_param", 144, OPT, "CropParameter"),
                       ("dropout_param", 108, OPT, "DropoutParameter"),
                       ("eltwise_param", 110, OPT, "EltwiseParameter"),
                       ("inner_product_param", 117, OPT, "InnerProductParameter"),
                       ("input_param", 143, OPT, "InputParameter"),
                       ("lrn_param", 118, OPT, "LRNParameter"),
                       ("pooling_param", 121, OPT, "PoolingParameter"),
                       ("python_param", 130, OPT, "PythonParameter"),
                       ("relu_param", 123, OPT, "ReLUParameter"),
                       ("scale_param", 142, OPT, "ScaleParameter")],
    "V1LayerParameter": [("bottom", 2, REP, "string"), ("top", 3, REP, "string"),
                         ("name", 4, OPT, "string"), ("type", 5, OPT, "enum:V1LayerType"),
                         ("blobs", 6, REP, "BlobProto"), ("blobs_lr", 7, REP, "float"),
                         ("weight_decay", 8, REP, "float"),
                         ("concat_param", 9, OPT, "ConcatParameter"),
                         ("convolution_param", 10, OPT, "ConvolutionParameter"),
                         ("dropout_param", 12, OPT, "DropoutParameter"),
                         ("eltwise_param", 24, OPT, "EltwiseParameter"),
                         ("pooling_param", 19, OPT, "PoolingParameter"),
                         ("loss_param", 42, OPT, "LossParameter")],
    "LossParameter": [("ignore_label", 1, OPT, "int32"), ("normalize", 2, OPT, "bool"),
                      ("normalization", 3, OPT, "enum:NormalizationMode")],
    "AccuracyParameter": [("top_k", 1, OPT, "uint32"), ("ignore_label", 3, OPT, "int32")],
    "ConcatParameter": [("concat_dim", 1, OPT, "uint32"), ("axis", 2, OPT, "int32")],
    "ConvolutionParameter": [("num_output", 1, OPT, "uint32"), ("bias_term", 2, OPT, "bool"),
                             ("pad", 3, REP, "uint32"), ("kernel_size", 4, REP, "uint32"),
                             ("group", 5, OPT, "uint32"), ("stride", 6, REP, "uint32"),
                             ("weight_filler", 7, OPT, "FillerParameter"),
                             ("bias_filler", 8, OPT, "FillerParameter"),
                             ("pad_h", 9, OPT, "uint32"), ("pad_w", 10, OPT, "uint32"),
                             ("kernel_h", 11, OPT, "uint32"), ("kernel_w", 12, OPT, "uint32"),
                             ("stride_h", 13, OPT, "uint32"), ("stride_w", 14, OPT, "uint32"),
                             ("dilation", 18, REP, "uint32")],
    "CropParameter": [("axis", 1, OPT, "int32"), ("offset", 2, REP, "uint32")],
    "DropoutParameter": [("dropout_ratio", 1, OPT, "float")],
    "EltwiseParameter": [("operation", 1, OPT, "enum:EltwiseOp"), ("coeff", 2, REP, "float")],
    "InnerProductParameter": [("num_output", 1, OPT, "uint32"), ("bias_term", 2, OPT, "bool")],
    "InputParameter": [("shape", 1, REP, "BlobShape")],
    "LRNParameter": [("local_size", 1, OPT, "uint32"), ("alpha", 2, OPT, "float"),
                     ("beta", 3, OPT, "float"), ("k", 5, OPT, "float")],
    "PoolingParameter": [("pool", 1, OPT, "enum:PoolMethod"), ("kernel_size", 2, OPT, "uint32"),
                         ("stride", 3, OPT, "uint32"), ("pad", 4, OPT, "uint32")],
    "PythonParameter": [("module", 1, OPT, "string"), ("layer", 2, OPT, "string"),
                        ("param_str", 3, OPT, "string")],
    "ReLUParameter": [("negative_slope", 1, OPT, "float")],
    "ScaleParameter": [("axis", 1, OPT, "int32"), ("filler", 3, OPT, "FillerParameter"),
                       ("bias_term", 4, OPT, "bool")],
    "SolverParameter": [("train_net", 1, OPT, "string"), ("test_net", 2, REP, "string"),
                        ("test_iter", 3, REP, "int32"), ("test_interval", 4, OPT, "int32"),
                        ("base_lr", 5, OPT, "float"), ("display", 6, OPT, "int32"),
                        ("max_iter", 7, OPT, "int32"), ("lr_policy", 8, OPT, "string"),
                        ("gamma", 9, OPT, "float"), ("power", 10, OPT, "float"),
                        ("momentum", 11, OPT, "float"), ("weight_decay", 12, OPT, "float"),
                        ("stepsize", 13, OPT, "int32"), ("snapshot", 14, OPT, "int32"),
                        ("snapshot_prefix", 15, OPT, "string"),
                        ("test_initialization", 32, OPT, "bool"),
                        ("average_loss", 33, OPT, "int32"), ("stepvalue", 34, REP, "int32"),
                        ("iter_size", 36, OPT, "int32"), ("type", 40, OPT, "string")],
}
ENUMS = {"Phase": [("TRAIN", 0), ("TEST", 1)],
         "PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
         "EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
         "NormalizationMode": [("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2), ("NONE", 3)],
         "V1LayerType": [("NONE", 0), ("CONVOLUTION", 4), ("DECONVOLUTION", 39),
                         ("POOLING", 17), ("RELU", 18), ("DROPOUT", 6), ("ELTWISE", 25),
                         ("CONCAT", 3), ("SOFTMAX_LOSS", 21), ("INNER_PRODUCT", 14)]}
PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"),
          ("BlobProto", "double_data"), ("BlobProto", "double_diff")}


@functools.lru_cache(maxsize=None)
def messages(packed=True):
    """{message name: protobuf message class} for the table above."""
    pkg = "caffe" if packed else "caffe_unpacked"
    fd = descriptor_pb2.FileDescriptorProto(name=f"{pkg}.proto", package=pkg, syntax="proto2")
    for name, values in ENUMS.items():      # each in a message of its own, as in caffe.proto
        e = fd.message_type.add(name=f"Enum{name}").enum_type.add(name=name)   # (its scope)
        for v, n in values:
            e.value.add(name=v, number=n)
    for name, fields in CAFFE.items():
        m = fd.message_type.add(name=name)
        for fname, number, label, typ in fields:
            f = m.field.add(name=fname, number=number, label=label)
            if typ in T:
                f.type = T[typ]
            elif typ.startswith("enum:"):
                f.type, f.type_name = F.TYPE_ENUM, f".{pkg}.Enum{typ[5:]}.{typ[5:]}"
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, f".{pkg}.{typ}"
            if (name, fname) in PACKED:
                f.options.packed = packed
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.{name}"))
            for name in CAFFE}


def to_dict(msg):
    """{field: [values]} of the fields a message sets, messages as dicts and enums by name:
    comparable with minifcn's Message.to_dict()."""
    out = {}
    for fd, value in msg.ListFields():
        values = value if fd.is_repeated else [value]
        conv = []
        for v in values:
            if fd.type == F.TYPE_MESSAGE:
                v = to_dict(v)
            elif fd.type == F.TYPE_ENUM:
                v = fd.enum_type.values_by_number[v].name
            conv.append(v)
        out[fd.name] = conv
    return out
