"""The part of Caffe's caffe.proto that minifcn reads, as a table: message -> field -> (number,
type, repeated?). Field numbers, types and enum values are those of BVLC/caffe master,
src/caffe/proto/caffe.proto (proto2). The text parser (text_format.py) checks every field of a
prototxt against this table, so a misspelt or unknown field is refused by name and line; the
binary reader (caffemodel.py) takes the numbers of the few fields a .caffemodel needs from it.

A field line reads "name number type" with a trailing "*" for repeated fields; a type is a
scalar (string, bool, int32, int64, uint32, float, double), an enum of ENUMS or a message of
MESSAGES. Fields that caffe.proto has but minifcn does not read are listed in OTHER_FIELDS,
so that they are refused as unsupported rather than as unknown.
"""
from __future__ import annotations

SCALARS = ("string", "bool", "int32", "int64", "uint32", "float", "double")

_PROTO = """
NetParameter: name 1 string | input 3 string* | input_shape 8 BlobShape* | input_dim 4 int32* |
  force_backward 5 bool | state 6 NetState | debug_info 7 bool | layer 100 LayerParameter* |
  layers 2 V1LayerParameter*
NetState: phase 1 Phase | level 2 int32 | stage 3 string*
NetStateRule: phase 1 Phase | min_level 2 int32 | max_level 3 int32 | stage 4 string* |
  not_stage 5 string*
ParamSpec: name 1 string | share_mode 2 DimCheckMode | lr_mult 3 float | decay_mult 4 float
BlobShape: dim 1 int64*
BlobProto: shape 7 BlobShape | data 5 float* | diff 6 float* | double_data 8 double* |
  double_diff 9 double* | num 1 int32 | channels 2 int32 | height 3 int32 | width 4 int32
FillerParameter: type 1 string | value 2 float | min 3 float | max 4 float | mean 5 float |
  std 6 float | sparse 7 int32 | variance_norm 8 VarianceNorm
LayerParameter: name 1 string | type 2 string | bottom 3 string* | top 4 string* |
  phase 10 Phase | loss_weight 5 float* | param 6 ParamSpec* | blobs 7 BlobProto* |
  propagate_down 11 bool* | include 8 NetStateRule* | exclude 9 NetStateRule* |
  loss_param 101 LossParameter | accuracy_param 102 AccuracyParameter |
  concat_param 104 ConcatParameter | convolution_param 106 ConvolutionParameter |
  crop_param 144 CropParameter | dropout_param 108 DropoutParameter |
  eltwise_param 110 EltwiseParameter | inner_product_param 117 InnerProductParameter |
  input_param 143 InputParameter | lrn_param 118 LRNParameter |
  pooling_param 121 PoolingParameter | python_param 130 PythonParameter |
  relu_param 123 ReLUParameter | scale_param 142 ScaleParameter |
  softmax_param 125 SoftmaxParameter
V1LayerParameter: bottom 2 string* | top 3 string* | name 4 string | include 32 NetStateRule* |
  exclude 33 NetStateRule* | type 5 V1LayerType | blobs 6 BlobProto* | param 1001 string* |
  blob_share_mode 1002 DimCheckMode* | blobs_lr 7 float* | weight_decay 8 float* |
  loss_weight 35 float* | accuracy_param 27 AccuracyParameter |
  concat_param 9 ConcatParameter | convolution_param 10 ConvolutionParameter |
  dropout_param 12 DropoutParameter | eltwise_param 24 EltwiseParameter |
  inner_product_param 17 InnerProductParameter | lrn_param 18 LRNParameter |
  pooling_param 19 PoolingParameter | relu_param 30 ReLUParameter |
  softmax_param 39 SoftmaxParameter | loss_param 42 LossParameter
ConvolutionParameter: num_output 1 uint32 | bias_term 2 bool | pad 3 uint32* |
  kernel_size 4 uint32* | stride 6 uint32* | dilation 18 uint32* | pad_h 9 uint32 |
  pad_w 10 uint32 | kernel_h 11 uint32 | kernel_w 12 uint32 | stride_h 13 uint32 |
  stride_w 14 uint32 | group 5 uint32 | weight_filler 7 FillerParameter |
  bias_filler 8 FillerParameter | engine 15 Engine | axis 16 int32 | force_nd_im2col 17 bool
PoolingParameter: pool 1 PoolMethod | pad 4 uint32 | pad_h 9 uint32 | pad_w 10 uint32 |
  kernel_size 2 uint32 | kernel_h 5 uint32 | kernel_w 6 uint32 | stride 3 uint32 |
  stride_h 7 uint32 | stride_w 8 uint32 | engine 11 Engine | global_pooling 12 bool |
  round_mode 13 RoundMode
CropParameter: axis 1 int32 | offset 2 uint32*
EltwiseParameter: operation 1 EltwiseOp | coeff 2 float* | stable_prod_grad 3 bool
LossParameter: ignore_label 1 int32 | normalization 3 NormalizationMode | normalize 2 bool
AccuracyParameter: top_k 1 uint32 | axis 2 int32 | ignore_label 3 int32
ConcatParameter: axis 2 int32 | concat_dim 1 uint32
DropoutParameter: dropout_ratio 1 float
InnerProductParameter: num_output 1 uint32 | bias_term 2 bool | weight_filler 3 FillerParameter |
  bias_filler 4 FillerParameter | axis 5 int32 | transpose 6 bool
InputParameter: shape 1 BlobShape*
LRNParameter: local_size 1 uint32 | alpha 2 float | beta 3 float | norm_region 4 NormRegion |
  k 5 float | engine 6 Engine
PythonParameter: module 1 string | layer 2 string | param_str 3 string | share_in_parallel 4 bool
ReLUParameter: negative_slope 1 float | engine 2 Engine
ScaleParameter: axis 1 int32 | num_axes 2 int32 | filler 3 FillerParameter | bias_term 4 bool |
  bias_filler 5 FillerParameter
SoftmaxParameter: engine 1 Engine | axis 2 int32
SolverParameter: net 24 string | net_param 25 NetParameter | train_net 1 string |
  test_net 2 string* | train_net_param 21 NetParameter | test_net_param 22 NetParameter* |
  train_state 26 NetState | test_state 27 NetState* | test_iter 3 int32* |
  test_interval 4 int32 | test_compute_loss 19 bool | test_initialization 32 bool |
  base_lr 5 float | display 6 int32 | average_loss 33 int32 | max_iter 7 int32 |
  iter_size 36 int32 | lr_policy 8 string | gamma 9 float | power 10 float |
  momentum 11 float | weight_decay 12 float | regularization_type 29 string |
  stepsize 13 int32 | stepvalue 34 int32* | clip_gradients 35 float | snapshot 14 int32 |
  snapshot_prefix 15 string | snapshot_diff 16 bool | snapshot_format 37 SnapshotFormat |
  solver_mode 17 SolverMode | device_id 18 int32 | random_seed 20 int64 | type 40 string |
  delta 31 float | momentum2 39 float | rms_decay 38 float | debug_info 23 bool |
  snapshot_after_train 28 bool | solver_type 30 SolverType | layer_wise_reduce 41 bool |
  weights 42 string*
"""

_ENUMS = """
Phase: TRAIN 0 | TEST 1
DimCheckMode: STRICT 0 | PERMISSIVE 1
VarianceNorm: FAN_IN 0 | FAN_OUT 1 | AVERAGE 2
Engine: DEFAULT 0 | CAFFE 1 | CUDNN 2
PoolMethod: MAX 0 | AVE 1 | STOCHASTIC 2
RoundMode: CEIL 0 | FLOOR 1
EltwiseOp: PROD 0 | SUM 1 | MAX 2
NormalizationMode: FULL 0 | VALID 1 | BATCH_SIZE 2 | NONE 3
NormRegion: ACROSS_CHANNELS 0 | WITHIN_CHANNEL 1
SnapshotFormat: HDF5 0 | BINARYPROTO 1
SolverMode: CPU 0 | GPU 1
SolverType: SGD 0 | NESTEROV 1 | ADAGRAD 2 | RMSPROP 3 | ADADELTA 4 | ADAM 5
V1LayerType: NONE 0 | ABSVAL 35 | ACCURACY 1 | ARGMAX 30 | BNLL 2 | CONCAT 3 |
  CONTRASTIVE_LOSS 37 | CONVOLUTION 4 | DATA 5 | DECONVOLUTION 39 | DROPOUT 6 |
  DUMMY_DATA 32 | EUCLIDEAN_LOSS 7 | ELTWISE 25 | EXP 38 | FLATTEN 8 | HDF5_DATA 9 |
  HDF5_OUTPUT 10 | HINGE_LOSS 28 | IM2COL 11 | IMAGE_DATA 12 | INFOGAIN_LOSS 13 |
  INNER_PRODUCT 14 | LRN 15 | MEMORY_DATA 29 | MULTINOMIAL_LOGISTIC_LOSS 16 | MVN 34 |
  POOLING 17 | POWER 26 | RELU 18 | SIGMOID 19 | SIGMOID_CROSS_ENTROPY_LOSS 27 |
  SILENCE 36 | SOFTMAX 20 | SOFTMAX_LOSS 21 | SPLIT 22 | SLICE 33 | TANH 23 |
  WINDOW_DATA 24 | THRESHOLD 31
"""

# caffe.proto fields minifcn knows of but does not read: refused as "not supported"
OTHER_FIELDS = {
    "LayerParameter": "transform_param argmax_param batch_norm_param bias_param "
                      "contrastive_loss_param data_param dummy_data_param elu_param "
                      "embed_param exp_param flatten_param hdf5_data_param "
                      "hdf5_output_param hinge_loss_param image_data_param "
                      "infogain_loss_param log_param memory_data_param mvn_param "
                      "parameter_param power_param prelu_param recurrent_param "
                      "reduction_param reshape_param sigmoid_param spp_param slice_param "
                      "tanh_param threshold_param tile_param window_data_param".split(),
    "V1LayerParameter": "layer transform_param argmax_param contrastive_loss_param data_param "
                        "dummy_data_param exp_param hdf5_data_param hdf5_output_param "
                        "hinge_loss_param image_data_param infogain_loss_param "
                        "memory_data_param mvn_param power_param sigmoid_param slice_param "
                        "tanh_param threshold_param window_data_param".split(),
}


def _table(text, parse_item):
    out, name, body = {}, None, []
    for line in text.strip().splitlines():
        if not line.startswith(" "):
            if name:
                out[name] = dict(parse_item(i.split()) for i in " ".join(body).split("|"))
            name, rest = line.split(":", 1)
            body = [rest]
        else:
            body.append(line)
    out[name] = dict(parse_item(i.split()) for i in " ".join(body).split("|"))
    return out


def _field(words):
    name, number, typ = words
    return name, (int(number), typ.rstrip("*"), typ.endswith("*"))


MESSAGES = _table(_PROTO, _field)
ENUMS = _table(_ENUMS, lambda w: (w[0], int(w[1])))


def field(message, name):
    """(number, type, repeated) of a field, or None if the table has no such field."""
    return MESSAGES[message].get(name)


def number(message, name):
    return MESSAGES[message][name][0]
